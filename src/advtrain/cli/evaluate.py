def main() -> None:
    """Console entry point ``advtrain-eval`` (grows with the evaluation issues)."""
    raise SystemExit("advtrain-eval: not implemented yet")
