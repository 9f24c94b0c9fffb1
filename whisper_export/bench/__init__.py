"""`whisper-export bench`: measuring functions by system, whole-process runs and the report."""
