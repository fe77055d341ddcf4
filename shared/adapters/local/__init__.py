"""Local adapters over SQLite: the document store devhost and the tests share, and the file
helpers every local SQLite file goes through."""
