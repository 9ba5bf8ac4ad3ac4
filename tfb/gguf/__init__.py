"""tfb.gguf"""
