"""The share keeper: opens its sealed seeds of a federation round and answers once, signed, with its noise added."""
