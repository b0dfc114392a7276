"""The Tag-LLM engine: tag specs, heads, templates, encoding, isolated attention, span reuse, the tagged
model and tag libraries."""
