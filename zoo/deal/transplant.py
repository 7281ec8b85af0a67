"""Module transplant between causal LMs of one architecture (decoupled alignment, DeAl / DAPA).

Method (Luo et al., 2024, "Decoupled Alignment for Robust Plug-and-Play Adaptation"): alignment
knowledge of an aligned teacher LM sits mostly in its middle-layer MLPs (especially the gate
projections). Copying those modules into an unaligned student fine-tuned from the same base,

    student.model.layers[i].mlp  <-  teacher.model.layers[i].mlp      for i in the chosen layers,

restores the teacher's refusals while changing only a few percent of the student's parameters.

A *site* is ``(layer_index, module)``: a dotted module path inside decoder layer ``layer_index``
(``"mlp"``, ``"mlp.gate_proj"``, ``"self_attn.q_proj"``, ...; ``""`` is the whole decoder layer).
On the command line a site is written ``"12:mlp.gate_proj"`` (:func:`parse_site`, :func:`format_site`;
:func:`parse_sites` also reads comma-separated lists with layer ranges, ``"12-18:mlp,3:self_attn"``).

Both the zoo's :class:`zoo.nn.causal_lm.CausalLM` and Hugging Face ``LlamaForCausalLM`` (and other
Llama-style models) keep their decoder layers at ``model.model.layers``; any other layout raises
:class:`~zoo.core.errors.ConfigError`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from zoo.core.errors import ConfigError

Site = tuple[int, str]
SiteLike = Site | str


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers ``model.model.layers`` of a zoo ``CausalLM`` or a Llama-style HF causal LM."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(f"{type(model).__name__} has no decoder layers at model.model.layers; expected a "
                          f"zoo CausalLM or a Llama-style Hugging Face causal LM (e.g. LlamaForCausalLM)")
    return layers


def _layers_prefix(model: nn.Module) -> str:
    """The qualified name of the decoder layer list inside ``model`` (``"model.layers"``)."""
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ConfigError(f"{type(model).__name__}.model.layers is not registered as a submodule")  # pragma: no cover


def parse_site(text: str) -> Site:
    """``"12:mlp.gate_proj"`` -> ``(12, "mlp.gate_proj")``; ``"12"`` -> ``(12, "")`` (the whole layer)."""
    if not isinstance(text, str):
        raise ConfigError(f"a site must be a string 'LAYER:MODULE' such as '12:mlp.gate_proj', got {text!r}")
    layer, _, module = text.strip().partition(":")
    layer, module = layer.strip(), module.strip()
    if not layer.isdigit():
        raise ConfigError(f"site {text!r} must start with a non-negative layer index, as in '12:mlp.gate_proj'")
    if module and not all(part.isidentifier() or part.isdigit() for part in module.split(".")):
        raise ConfigError(f"site {text!r} has module path {module!r}; expected a dotted path such as "
                          f"'mlp' or 'mlp.gate_proj'")
    return int(layer), module


def format_site(site: Site) -> str:
    """``(12, "mlp.gate_proj")`` -> ``"12:mlp.gate_proj"``; ``(12, "")`` -> ``"12"``."""
    layer, module = _check_site(site)
    return f"{layer}:{module}" if module else str(layer)


def parse_sites(text: str) -> list[Site]:
    """Comma-separated sites with optional layer ranges: ``"12-14:mlp,3:self_attn"`` ->
    ``[(12, "mlp"), (13, "mlp"), (14, "mlp"), (3, "self_attn")]`` (ranges include both ends)."""
    sites: list[Site] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            raise ConfigError(f"empty site in {text!r}; expected comma-separated sites such as '12-14:mlp,3:self_attn'")
        layers, sep, module = part.partition(":")
        low, dash, high = layers.strip().partition("-")
        if dash:
            if not (low.strip().isdigit() and high.strip().isdigit()) or int(low) > int(high):
                raise ConfigError(f"site {part!r} has layer range {layers.strip()!r}; expected LOW-HIGH with "
                                  f"0 <= LOW <= HIGH, as in '12-18:mlp'")
            sites.extend(parse_site(f"{i}{sep}{module}") for i in range(int(low), int(high) + 1))
        else:
            sites.append(parse_site(part))
    return sites


def _check_site(site: SiteLike) -> Site:
    if isinstance(site, str):
        return parse_site(site)
    if (not isinstance(site, (tuple, list)) or len(site) != 2 or isinstance(site[0], bool)
            or not isinstance(site[0], int) or not isinstance(site[1], str)):
        raise ConfigError(f"a site must be (layer_index: int, module: str) or 'LAYER:MODULE', got {site!r}")
    return int(site[0]), site[1]


def _site_module(model: nn.Module, site: Site, role: str = "model") -> nn.Module:
    """The module a checked site names in ``model``; one-line errors for a bad layer or path."""
    layers = decoder_layers(model)
    layer, module = site
    if not 0 <= layer < len(layers):
        raise ConfigError(f"site {format_site(site)!r}: layer index {layer} is out of range for the {role} "
                          f"({type(model).__name__} with {len(layers)} decoder layers: expected 0 .. {len(layers) - 1})")
    if not module:
        return layers[layer]
    try:
        return layers[layer].get_submodule(module)
    except AttributeError:
        known = [name for name, _ in layers[layer].named_modules() if name]
        raise ConfigError(f"site {format_site(site)!r}: unknown module {module!r} in decoder layer {layer} of the "
                          f"{role} ({type(model).__name__}); expected one of {', '.join(known)}") from None


def normalize_sites(model: nn.Module, sites: Iterable[SiteLike]) -> list[Site]:
    """Check sites against ``model`` (layer in range, module exists and has parameters) and drop
    repeats, keeping the first occurrence's order."""
    if isinstance(sites, str):
        sites = parse_sites(sites)
    out: list[Site] = []
    for raw in sites:
        site = _check_site(raw)
        module = _site_module(model, site)
        if next(module.parameters(), None) is None:
            raise ConfigError(f"site {format_site(site)!r} names a module without parameters "
                              f"({type(module).__name__}); expected e.g. 'mlp' or 'mlp.gate_proj'")
        if site not in out:
            out.append(site)
    return out


def _site_prefixes(model: nn.Module, sites: Iterable[SiteLike]) -> list[str]:
    prefix = _layers_prefix(model)
    return [f"{prefix}.{layer}" + (f".{module}" if module else "") + "." for layer, module in
            normalize_sites(model, sites)]


def site_parameter_names(model: nn.Module, sites: Iterable[SiteLike]) -> list[str]:
    """Qualified names of the parameters under any of ``sites`` (each once, in ``named_parameters``
    order), e.g. ``model.layers.12.mlp.gate_proj.weight``."""
    prefixes = _site_prefixes(model, sites)
    return [name for name, _ in model.named_parameters() if any(name.startswith(p) for p in prefixes)]


def changed_parameter_share(model: nn.Module, sites: Iterable[SiteLike]) -> float:
    """Parameters under ``sites`` / all parameters of ``model`` (tied tensors counted once)."""
    chosen = set(site_parameter_names(model, sites))
    counts = {name: p.numel() for name, p in model.named_parameters()}  # named_parameters drops tied repeats
    total = sum(counts.values())
    return sum(counts[name] for name in chosen) / total if total else 0.0


@torch.no_grad()
def transplant(student: nn.Module, teacher: nn.Module, sites: Iterable[SiteLike] | str) -> nn.Module:
    """A deep copy of ``student`` whose parameters (and buffers) under each site are copies of
    ``teacher``'s; ``student`` and ``teacher`` are left untouched and share no tensors with the result.

    Raises :class:`ConfigError` for a layer index out of range (in either model), an unknown module
    path, or a teacher tensor missing or shaped unlike the student's (different architectures).
    Values are cast to the student's dtype and device."""
    sites = normalize_sites(student, sites if not isinstance(sites, str) else parse_sites(sites))
    for site in sites:
        _site_module(teacher, site, role="teacher")
    child = copy.deepcopy(student)
    for site in sites:
        target, source = _site_module(child, site), _site_module(teacher, site, role="teacher")
        source_state = dict(source.named_parameters())
        source_state.update(dict(source.named_buffers()))
        target_state = dict(target.named_parameters())
        target_state.update(dict(target.named_buffers()))
        for name, tensor in target_state.items():
            value = source_state.get(name)
            if value is None:
                raise ConfigError(f"site {format_site(site)!r}: the teacher ({type(teacher).__name__}) has no "
                                  f"tensor {name!r} there; expected the student's architecture")
            if value.shape != tensor.shape:
                raise ConfigError(f"site {format_site(site)!r}: tensor {name!r} has shape {tuple(value.shape)} in "
                                  f"the teacher but {tuple(tensor.shape)} in the student; expected one architecture")
            tensor.copy_(value)
    return child


def site_names(sites: Sequence[SiteLike]) -> list[str]:
    """``[(12, "mlp"), ...]`` -> ``["12:mlp", ...]``."""
    return [format_site(_check_site(s)) for s in sites]


__all__ = [
    "Site",
    "changed_parameter_share",
    "decoder_layers",
    "format_site",
    "normalize_sites",
    "parse_site",
    "parse_sites",
    "site_names",
    "site_parameter_names",
    "transplant",
]
