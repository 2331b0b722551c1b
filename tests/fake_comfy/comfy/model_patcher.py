"""Fake of comfy.model_patcher.ModelPatcher: moves the wrapped module between devices."""


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.loaded = False

    def model_size(self):
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def patch_model(self, device_to=None, *args, **kwargs):
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to  # as the real ModelPatcher.load does
        self.loaded = True
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to  # as the real ModelPatcher.unpatch_model does
        self.loaded = False

    def detach(self, unpatch_all=True):
        self.unpatch_model(self.offload_device)
        return self.model
