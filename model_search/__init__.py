"""model_search: rank pre-trained models for transfer and measure how much each way of choosing loses."""
