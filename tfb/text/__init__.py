"""tfb.text: the tokenizer stored in a GGUF file and chat-template rendering.

    tok = load_tokenizer("model.gguf")
    ids = tok.encode_chat(messages)         # the file's chat template, rendered and tokenized
"""

from tfb.text.chat_template import render_chat_template
from tfb.text.detokenize import Detokenizer
from tfb.text.template_limits import RenderLimits
from tfb.text.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_metadata

__all__ = ["Detokenizer", "RenderLimits", "Tokenizer", "load_tokenizer", "render_chat_template",
           "tokenizer_from_metadata"]
