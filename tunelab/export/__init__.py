"""Export a trained model: merged Hugging Face folder, GGUF (f16, Q8_0, Q4_K_M, and 4- and 3-bit ones with
an importance matrix), Ollama Modelfile, and a faithfulness check against the PyTorch model. Entry point:
`tunelab.export.run.export_run`."""
