"""Azure-facing triggers. Each decodes its binding, hands the core a plain value, returns."""
