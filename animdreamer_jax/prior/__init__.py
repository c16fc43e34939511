"""prior"""
