"""MkDocs hook: replaces the marker on the config reference page with the table that
``fedtune config --markdown`` prints, rendered from the code at build time."""

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs API)
    if MARKER not in markdown:
        return markdown
    from fedtune.config_help import markdown as reference

    return markdown.replace(MARKER, reference())
