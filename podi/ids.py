"""Public identifiers: a short type prefix and 24 random lowercase characters (``tsk_…``)."""

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits
_BASE = len(_ALPHABET)


def new_id(prefix: str, length: int = 24) -> str:
    """``prefix_`` and ``length`` characters, each uniform over a–z0–9: one random number below
    36**length (drawn by rejection from the bits that cover it, one read of the OS's randomness
    per draw instead of one per character), written in base 36."""
    limit = _BASE**length
    bits = limit.bit_length()
    while (number := secrets.randbits(bits)) >= limit:
        pass
    chars = []
    for _ in range(length):
        number, digit = divmod(number, _BASE)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_" + "".join(chars)
