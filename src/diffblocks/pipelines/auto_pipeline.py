"""Task-oriented AutoPipelines: pick the text-to-image, image-to-image or inpainting class of a model family.

``AutoPipelineForImage2Image.from_pretrained(sdxl_folder)`` reads ``_class_name`` from model_index.json
(e.g. ``StableDiffusionXLPipeline``), finds the family row it belongs to in the mapping tables
(``stable-diffusion-xl``) and loads that row's image-to-image class. ``from_pipe`` does the same for an
existing pipeline, sharing its components. ``controlnet=`` switches to the ControlNet row of the family
(``controlnet=None`` in ``from_pipe`` switches back), ``enable_pag=`` to the PAG row.

The tables hold class *names*; classes are imported only when a row is used, so a family whose pipelines
are not available yet fails with a clear error only when asked for.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Optional, Union

from ..configuration import ConfigMixin
from .pipeline_utils import MODEL_INDEX_NAME, DiffusionPipeline, _download_pipeline_folder, resolve_own_class

logger = logging.getLogger(__name__)

AUTO_TEXT2IMAGE_PIPELINES_MAPPING = OrderedDict(
    [
        ("stable-diffusion", "StableDiffusionPipeline"),
        ("stable-diffusion-xl", "StableDiffusionXLPipeline"),
        ("stable-diffusion-controlnet", "StableDiffusionControlNetPipeline"),
        ("stable-diffusion-xl-controlnet", "StableDiffusionXLControlNetPipeline"),
        ("stable-diffusion-xl-controlnet-union", "StableDiffusionXLControlNetUnionPipeline"),
        ("stable-diffusion-pag", "StableDiffusionPAGPipeline"),
        ("stable-diffusion-xl-pag", "StableDiffusionXLPAGPipeline"),
        ("stable-diffusion-controlnet-pag", "StableDiffusionControlNetPAGPipeline"),
        ("stable-diffusion-xl-controlnet-pag", "StableDiffusionXLControlNetPAGPipeline"),
        ("lcm", "LatentConsistencyModelPipeline"),
    ]
)

AUTO_IMAGE2IMAGE_PIPELINES_MAPPING = OrderedDict(
    [
        ("stable-diffusion", "StableDiffusionImg2ImgPipeline"),
        ("stable-diffusion-xl", "StableDiffusionXLImg2ImgPipeline"),
        ("stable-diffusion-controlnet", "StableDiffusionControlNetImg2ImgPipeline"),
        ("stable-diffusion-xl-controlnet", "StableDiffusionXLControlNetImg2ImgPipeline"),
        ("stable-diffusion-xl-controlnet-union", "StableDiffusionXLControlNetUnionImg2ImgPipeline"),
        ("stable-diffusion-pag", "StableDiffusionPAGImg2ImgPipeline"),
        ("stable-diffusion-xl-pag", "StableDiffusionXLPAGImg2ImgPipeline"),
        ("stable-diffusion-xl-controlnet-pag", "StableDiffusionXLControlNetPAGImg2ImgPipeline"),
        ("lcm", "LatentConsistencyModelImg2ImgPipeline"),
    ]
)

AUTO_INPAINT_PIPELINES_MAPPING = OrderedDict(
    [
        ("stable-diffusion", "StableDiffusionInpaintPipeline"),
        ("stable-diffusion-xl", "StableDiffusionXLInpaintPipeline"),
        ("stable-diffusion-controlnet", "StableDiffusionControlNetInpaintPipeline"),
        ("stable-diffusion-xl-controlnet", "StableDiffusionXLControlNetInpaintPipeline"),
        ("stable-diffusion-xl-controlnet-union", "StableDiffusionXLControlNetUnionInpaintPipeline"),
        ("stable-diffusion-pag", "StableDiffusionPAGInpaintPipeline"),
        ("stable-diffusion-xl-pag", "StableDiffusionXLPAGInpaintPipeline"),
        ("stable-diffusion-controlnet-pag", "StableDiffusionControlNetPAGInpaintPipeline"),
    ]
)

SUPPORTED_TASKS_MAPPINGS = [
    AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
    AUTO_INPAINT_PIPELINES_MAPPING,
]

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")


def _get_model(pipeline_class_name: str) -> Optional[str]:
    """The family key (row) whose text2img/img2img/inpaint class is named ``pipeline_class_name``, or None."""
    for mapping in SUPPORTED_TASKS_MAPPINGS:
        for model_name, class_name in mapping.items():
            if class_name == pipeline_class_name:
                return model_name
    return None


def _get_task_class(mapping: "OrderedDict[str, str]", pipeline_class_name: str, throw_error_if_not_exist: bool = True):
    """The class of ``mapping``'s row for the family of ``pipeline_class_name``."""
    model_name = _get_model(pipeline_class_name)
    if model_name is not None:
        task_class_name = mapping.get(model_name)
        if task_class_name is not None:
            try:
                cls = resolve_own_class(task_class_name)
            except ImportError as err:
                raise NotImplementedError(
                    f"AutoPipeline maps {pipeline_class_name} to {task_class_name}, which is not available in this "
                    f"diffblocks build: {err}"
                ) from err
            if cls is None:
                raise NotImplementedError(
                    f"AutoPipeline maps {pipeline_class_name} to {task_class_name}, which diffblocks does not "
                    "implement yet."
                )
            return cls
    if throw_error_if_not_exist:
        raise ValueError(f"AutoPipeline can't find a pipeline linked to {pipeline_class_name} for {model_name}")
    return None


def _controlnet_suffix(controlnet: Any) -> str:
    return "ControlNetUnion" if type(controlnet).__name__ == "ControlNetUnionModel" else "ControlNet"


def _read_class_name(pretrained_model_or_path: Union[str, os.PathLike], hub_kwargs: Dict[str, Any]) -> str:
    path = os.fspath(pretrained_model_or_path)
    config = DiffusionPipeline.load_config(path, **{k: v for k, v in hub_kwargs.items() if k != "proxies"})
    if isinstance(config, tuple):
        config = config[0]
    class_name = config.get("_class_name")
    if not isinstance(class_name, str):
        raise ValueError(
            f"{MODEL_INDEX_NAME} of {path} must name its pipeline class in `_class_name` (a string), got {class_name!r}"
        )
    return class_name


class _AutoPipelineBase(ConfigMixin):
    config_name = MODEL_INDEX_NAME
    _mapping: "OrderedDict[str, str]"
    # the class-name fragment that marks this task in a pipeline class name, e.g. "Img2Img"
    _task_word: str = ""

    def __init__(self, *args: Any, **kwargs: Any):
        name = type(self).__name__
        raise EnvironmentError(
            f"{name} is designed to be instantiated using the `{name}.from_pretrained(pretrained_model_name_or_path)` "
            f"or `{name}.from_pipe(pipeline)` methods."
        )

    # ------------------------------------------------------------------ name rewriting
    @classmethod
    def _name_for_pretrained(cls, class_name: str, kwargs: Dict[str, Any]) -> str:
        word = cls._task_word
        if word and f"{word}Pipeline" in class_name:
            to_replace = f"{word}Pipeline"
        elif "ControlPipeline" in class_name:
            to_replace = "ControlPipeline"
        else:
            to_replace = "Pipeline"
        name = class_name
        if "controlnet" in kwargs:
            # diffusers inserts "ControlNet" even when the folder already is a ControlNet pipeline (and then finds
            # no "...ControlNetControlNetPipeline"): the folder's own ControlNet marker is replaced instead;
            # `controlnet=None` asks for the row without ControlNet
            name = name.replace("ControlNetUnion", "").replace("ControlNet", "")
            if kwargs["controlnet"] is not None:
                name = name.replace(to_replace, _controlnet_suffix(kwargs["controlnet"]) + to_replace)
        if "enable_pag" in kwargs:
            if kwargs.pop("enable_pag"):
                name = name.replace(to_replace, "PAG" + to_replace)
        if word and to_replace == "ControlPipeline":
            name = name.replace("ControlPipeline", f"Control{word}Pipeline")
        return name

    @classmethod
    def _class_for_pipe(cls, source_name: str, kwargs: Dict[str, Any]) -> type:
        target = _get_task_class(cls._mapping, source_name)
        suffix = f"{cls._task_word}Pipeline"  # "Pipeline" for text2img
        if "controlnet" in kwargs:
            name = target.__name__
            if kwargs["controlnet"] is not None:
                kind = _controlnet_suffix(kwargs["controlnet"])
                name = name.replace("ControlNetUnion", "").replace("ControlNet", "")
                if name.endswith("PAG" + suffix):
                    name = name[: -len("PAG" + suffix)] + kind + "PAG" + suffix
                else:
                    name = name[: -len(suffix)] + kind + suffix
            else:
                name = name.replace("ControlNetUnion", "").replace("ControlNet", "")
            target = _get_task_class(cls._mapping, name)
        if "enable_pag" in kwargs:
            name = target.__name__.replace("PAG", "")
            if kwargs.pop("enable_pag"):
                name = name[: -len(suffix)] + "PAG" + suffix
            target = _get_task_class(cls._mapping, name)
        return target

    # ------------------------------------------------------------------ public API
    @classmethod
    def from_pretrained(cls, pretrained_model_or_path: Union[str, os.PathLike], **kwargs: Any) -> DiffusionPipeline:
        """Load ``pretrained_model_or_path`` as this task's pipeline of its model family.

        Accepts every keyword of ``DiffusionPipeline.from_pretrained`` plus ``controlnet=`` and ``enable_pag=``.
        """
        if not isinstance(pretrained_model_or_path, (str, os.PathLike)) or not os.fspath(pretrained_model_or_path):
            raise TypeError(
                "`pretrained_model_or_path` must be a local folder or a Hub repo id (str), got "
                f"{pretrained_model_or_path!r}"
            )
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        name_or_path = os.fspath(pretrained_model_or_path)
        if os.path.isdir(name_or_path):
            folder = name_or_path
        else:
            # resolve the repo once (one metadata request when cached) and load from the snapshot folder
            folder = _download_pipeline_folder(
                name_or_path,
                cache_dir=hub_kwargs.get("cache_dir"),
                revision=hub_kwargs.get("revision"),
                local_files_only=hub_kwargs.get("local_files_only"),
                token=hub_kwargs.get("token"),
                force_download=bool(hub_kwargs.get("force_download", False)),
                variant=kwargs.get("variant"),
                use_safetensors=kwargs.get("use_safetensors"),
                skip_components=list(kwargs),
            )
        class_name = _read_class_name(folder, {})
        name = cls._name_for_pretrained(class_name, kwargs)
        task_class = _get_task_class(cls._mapping, name)
        pipeline = task_class.from_pretrained(folder, **kwargs)
        pipeline.register_to_config(_name_or_path=name_or_path)
        return pipeline

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        """Build this task's pipeline from ``pipeline``'s components (shared, never copied or cast).

        Components and settings passed as keywords override the source's; settings the new class does not
        take are kept in its config as ``_<name>`` so a later ``from_pipe`` back restores them.
        """
        if not isinstance(pipeline, DiffusionPipeline):
            raise TypeError(f"`pipeline` must be a DiffusionPipeline, got {type(pipeline).__name__}")
        for key in ("torch_dtype", "dtype"):
            if kwargs.pop(key, None) is not None:
                logger.warning("%s.from_pipe ignores `%s`: components are shared as they are.", cls.__name__, key)
        original_config = dict(pipeline.config)
        target = cls._class_for_pipe(type(pipeline).__name__, kwargs)

        expected, optional = target._get_signature_keys(target)
        name_or_path = original_config.pop("_name_or_path", None)
        passed = {k: kwargs.pop(k) for k in list(kwargs) if k in expected}
        carried = {k: v for k, v in pipeline.components.items() if k in expected and k not in passed}
        passed_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in optional}
        original_settings = {k: v for k, v in original_config.items() if k in optional and k not in passed_settings}
        for key in [k for k in original_config if k.startswith("_") and k[1:] in optional and k[1:] not in passed_settings]:
            original_settings[key[1:]] = original_config.pop(key)
        leftovers = {k: v for k, v in kwargs.items() if not (k == "controlnet" and v is None)}
        if leftovers:
            logger.warning("Keyword arguments %s are not expected by %s and will be ignored.",
                           leftovers, target.__name__)

        init_kwargs = {**passed, **carried, **passed_settings, **original_settings}
        unused = {(k if k.startswith("_") else f"_{k}"): v for k, v in original_config.items() if k not in init_kwargs}
        missing = set(expected) - set(target._optional_components) - set(init_kwargs)
        if missing:
            raise ValueError(
                f"Pipeline {target} expected {expected}, but only {set(passed) | set(carried)} were passed"
            )
        new_pipeline = target(**init_kwargs)
        new_pipeline.register_to_config(_name_or_path=name_or_path)
        new_pipeline.register_to_config(**unused)
        return new_pipeline


class AutoPipelineForText2Image(_AutoPipelineBase):
    """Text-to-image pipeline of a checkpoint's family (see the module docstring)."""

    _mapping = AUTO_TEXT2IMAGE_PIPELINES_MAPPING
    _task_word = ""


class AutoPipelineForImage2Image(_AutoPipelineBase):
    """Image-to-image pipeline of a checkpoint's family (see the module docstring)."""

    _mapping = AUTO_IMAGE2IMAGE_PIPELINES_MAPPING
    _task_word = "Img2Img"


class AutoPipelineForInpainting(_AutoPipelineBase):
    """Inpainting pipeline of a checkpoint's family (see the module docstring)."""

    _mapping = AUTO_INPAINT_PIPELINES_MAPPING
    _task_word = "Inpaint"
