"""Files: uploads streamed to storage, ranged downloads, signed links (API.md, "Files")."""
