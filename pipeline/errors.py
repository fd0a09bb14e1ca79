"""One exception type for bad input: the CLI prints its message as one line, exit 2."""


class UserError(ValueError):
    """Bad input from the user (config, name, path, shape): a one-line message."""


def choose(kind: str, name: str, choices) -> str:
    """Return `name` if it is one of `choices`, else raise a UserError listing them."""
    choices = list(choices)
    if name not in choices:
        raise UserError(f"unknown {kind} {name!r}; valid choices: {', '.join(map(str, choices))}")
    return name
