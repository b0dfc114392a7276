"""domainlm: turn general-purpose language models into scientific and biomedical specialists."""

import warnings

from domainlm.errors import DomainLMError, InputError

# peft asks every model it wraps for a property transformers has renamed; the warning is peft's to fix, and
# users of every LoRA / prompt-tuning run would otherwise read it.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

__all__ = ["DomainLMError", "InputError", "TaggedModel", "TagLibrary", "__version__"]


def __getattr__(name):
    # Lazy so that `import domainlm` (and the CLI's --help) does not pay for torch + transformers.
    if name == "TaggedModel":
        from domainlm.engine.model import TaggedModel

        return TaggedModel
    if name == "TagLibrary":
        from domainlm.engine.library import TagLibrary

        return TagLibrary
    raise AttributeError(name)
