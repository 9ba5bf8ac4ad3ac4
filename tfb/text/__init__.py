"""tfb.text"""
