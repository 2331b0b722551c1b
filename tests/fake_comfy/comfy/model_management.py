"""Fake of the parts of comfy.model_management this pack uses, CPU only, with real bookkeeping
of loaded ModelPatchers so tests can check that ComfyUI's memory management sees our models."""
import gc
import weakref

import torch


class InterruptProcessingException(Exception):
    pass


interrupt_processing = False
current_loaded_models = []
soft_empty_cache_calls = 0


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted():
    return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def is_device_mps(device):
    return getattr(device, "type", "") == "mps"


def soft_empty_cache(force=False):
    global soft_empty_cache_calls
    soft_empty_cache_calls += 1


class LoadedModel:
    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.currently_used = True

    @property
    def model(self):
        return self._model()

    def model_load(self):
        self.model.patch_model(self.device)

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.unpatch_model(self.model.offload_device)
        return True


def cleanup_models():
    for lm in [m for m in current_loaded_models if m.model is None]:
        current_loaded_models.remove(lm)


#: the fake device's memory in bytes for memory-pressure tests; None is a device with room for all
device_memory = None


def _resident_bytes():
    return sum(lm.model.model_size() for lm in current_loaded_models if lm.model is not None)


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """As ComfyUI: make room for the models of this one request by evicting other loaded models, never
    a member of the request, in ComfyUI's order (the smallest first, then the most recently loaded:
    ``free_memory`` sorts by memory, then list position), then load them."""
    cleanup_models()
    models = list(dict.fromkeys(models))
    if device_memory is not None:
        need = sum(m.model_size() for m in models if not any(lm.model is m for lm in current_loaded_models))
        others = [(lm.model.model_size(), i, lm) for i, lm in enumerate(current_loaded_models)
                  if lm.model is not None and lm.model not in models]
        for _, _, lm in sorted(others, key=lambda x: x[:2]):
            if _resident_bytes() + need <= device_memory:
                break
            lm.model_unload()
            current_loaded_models.remove(lm)
    for m in models:
        for lm in current_loaded_models:
            if lm.model is m:
                current_loaded_models.remove(lm)
                current_loaded_models.insert(0, lm)
                lm.model_load()
                break
        else:
            lm = LoadedModel(m)
            lm.model_load()
            current_loaded_models.insert(0, lm)


def load_model_gpu(model):
    return load_models_gpu([model])


def free_memory(memory_required, device, keep_loaded=()):
    """Evict loaded models (all of them here) like ComfyUI does under memory pressure."""
    for lm in list(current_loaded_models):
        if lm.model is not None and lm.model not in keep_loaded:
            lm.model_unload()
            current_loaded_models.remove(lm)
    gc.collect()


def unload_all_models():
    free_memory(1e30, get_torch_device())
