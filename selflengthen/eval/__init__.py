"""Evaluation: length following (LonGen-style constraints, LongBench-Write length score) and
quality (an LLM judge), for one or more models on the same prompts."""
