"""Read-only questions: SQL over the index, `ls`/`show` listings, a kept-open handle's queries."""
