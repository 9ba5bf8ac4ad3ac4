"""tfb.nn"""
