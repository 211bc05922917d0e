from django import template

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """Show a name that a RIS sent in capitals ("Dr. PAT EXAMPLE") as "Dr. Pat Example".

    Names typed in mixed case are left alone, so "McDonald" stays as it is.
    """
    words = str(value).split()
    return " ".join(word.title() if word.isupper() else word for word in words)
