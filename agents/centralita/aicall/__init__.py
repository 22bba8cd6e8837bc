"""aicall"""
