"""Text: the course's ULMFiT flow — tokenizer, vocabulary, AWD-LSTM language model and classifier, their data."""
