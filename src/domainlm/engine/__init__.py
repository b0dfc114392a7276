"""The Tag-LLM engine: tag specs, heads, templates, encoding, isolated attention, span reuse, the tagged
model, tag libraries, what tag training trains (`tag_training`) and inference."""
