"""The evaluation stage: generate answers with one or more models on held-out examples, score them
(BLEU, ROUGE-L, BERTScore, perplexity, task accuracy), compare them with bootstrap intervals and
write eval.json, predictions.jsonl, summary.md, samples.html and metrics.png. See docs/evaluate.md."""
