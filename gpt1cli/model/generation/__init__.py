"""Generation from a trained decoder, in layers:

* ``processors``: logit processors (repetition penalty, n-gram ban, temperature, top-k, top-p);
* ``sampling``: the one KV-cached decoding loop, greedy or sampled, through the processors;
* ``beam_search``: beam search over the same processors;
* ``completion``: text in, text out (decoding settings, stop strings, streaming, detokenisation).
"""
