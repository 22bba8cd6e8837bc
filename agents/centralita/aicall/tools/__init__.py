"""aicall/tools"""
