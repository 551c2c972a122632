"""A stand-in command with a bug, for the dispatcher's error-boundary test (a KeyError is never user input)."""


def main(argv: list[str]) -> int:
    raise KeyError("views")
