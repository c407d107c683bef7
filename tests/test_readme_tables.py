"""The docs' generated sections equal what ``python -m tests.readme_tables`` makes of today's code."""

import pytest
import readme_tables


def test_every_section_is_in_a_document():
    found = [name for document in readme_tables.DOCUMENTS for name in readme_tables.sections(document.read_text())]
    assert sorted(found) == sorted(readme_tables.SECTIONS)


@pytest.mark.parametrize("document", readme_tables.DOCUMENTS, ids=lambda d: d.name)
def test_every_generated_section_is_up_to_date(document):
    text = document.read_text()
    assert readme_tables.render(text) == text, "run: python -m tests.readme_tables"
