"""ptycho_fast"""
