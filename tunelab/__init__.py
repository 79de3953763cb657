"""tunelab: fine-tune, measure, export and serve small LLMs."""
__version__ = "0.1.0"
