"""Interoperability: bring weights in from, and take them out to, other GPT implementations.

* :mod:`.layout`         - tensor names and shapes: ours, transformers', the original release's;
* :mod:`.problems`       - collect every misfit of a conversion into one error;
* :mod:`.runs`           - write an imported model as a run of ours, all or nothing;
* :mod:`.openai_release` - the original GPT-1 release (``params_*.npy`` + encoder + merges);
* :mod:`.hf`             - transformers' ``OpenAIGPT*`` and ``GPT2*`` directories, both ways, tokenizer included;
* :mod:`.model_card`     - the ``README.md`` an export carries.

Runtime code here never imports transformers: its directories are read and written as plain
``config.json`` + safetensors files.
"""

from .hf import export_hf, import_hf
from .openai_release import import_openai_release

__all__ = ["export_hf", "import_hf", "import_openai_release"]
