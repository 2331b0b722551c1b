"""Fake of ComfyUI's folder_paths (the functions this pack and ComfyUI's save nodes use)."""
import os
import re

base_path = os.path.abspath("ComfyUI")
models_dir = os.path.join(base_path, "models")
output_directory = os.path.join(base_path, "output")
temp_directory = os.path.join(base_path, "temp")
input_directory = os.path.join(base_path, "input")
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths = {}


def set_base(path):
    """Test helper: point every folder at ``path`` (ComfyUI's --base-directory)."""
    global base_path, models_dir, output_directory, temp_directory, input_directory
    base_path = os.path.abspath(path)
    models_dir = os.path.join(base_path, "models")
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")
    folder_names_and_paths.clear()
    for d in (models_dir, output_directory, temp_directory, input_directory):
        os.makedirs(d, exist_ok=True)


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.get(folder_name, ([], set()))
    if full_folder_path not in paths:
        if is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    folder_names_and_paths[folder_name] = (paths, exts)


def get_folder_paths(folder_name):
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name):
    out = []
    paths, exts = folder_names_and_paths[folder_name]
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in os.walk(root):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.append(os.path.relpath(os.path.join(dirpath, f), root).replace("\\", "/"))
    return sorted(set(out))


def get_full_path(folder_name, filename):
    for root in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        p = os.path.join(root, filename)
        if os.path.isfile(p):
            return p
    return None


def get_full_path_or_raise(folder_name, filename):
    p = get_full_path(folder_name, filename)
    if p is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return p


def get_input_directory():
    return input_directory


def get_output_directory():
    return output_directory


def get_temp_directory():
    return temp_directory


def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
    """ComfyUI's naming: '<prefix>_<counter:05>_.<ext>', counter = highest existing + 1."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed.")
    counter = 1
    if os.path.isdir(full_output_folder):
        pat = re.compile(re.escape(filename) + r"_(\d+)_")
        nums = [int(m.group(1)) for f in os.listdir(full_output_folder) if (m := pat.match(f))]
        counter = max(nums, default=0) + 1
    os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, counter, subfolder, filename_prefix
