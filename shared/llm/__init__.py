"""The LLM layer: quota-aware limiting, one retry layer, breakers, fallbacks, cache and budgets.

``build_chat_model`` is what the composition root calls; everything can also be assembled by hand
(tests, the benchmark) from the parts below.

The package holds the guards only; ``shared.bootstrap`` (the one composition root) builds them
into the process's ``ChatModel``.
"""
