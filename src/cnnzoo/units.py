"""How counts are shown (parameters, MACs): a leaf module, torch-free, shared by the summary and the model table."""

__all__ = ["format_count"]


def format_count(n: int) -> str:
    """2,350,000,000 -> '2.35 G'; small counts keep their digits."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 100 * scale else f"{n / scale:.1f} {unit}"
    return f"{n} "
