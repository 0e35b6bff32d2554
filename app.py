"""StyleMix web demo: a bearded face + a shaved-head face -> one face with both.

    streamlit run app.py                       # the bundled synthfaces64 model
    STYLEMIX_APP_MODEL=path/to/G.safetensors streamlit run app.py

Streamlit only: widgets, layout and caching. Every model step goes through `stylemix.api`;
plain helpers live in app_ui.py.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import app_ui as ui
from stylemix import api

st.set_page_config(page_title="StyleMix", page_icon="🧔", layout="wide")


# ----------------------------------------------------------------------------------------------
# Process-wide resources (shared by every session of this server process)


@st.cache_resource(show_spinner=False)
def caches() -> dict[str, ui.ResultCache]:
    """Aligned crops, inversions (by image hash, model, quality) and renders.

    The 'invert' cache serialises its computations, so long inversions run one at a time per
    process however many people use the app."""
    return {"align": ui.ResultCache(64), "invert": ui.ResultCache(64), "render": ui.ResultCache(256)}


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_model(key: str):
    return api.load_model(ui.model_source(key))


@st.cache_data(ttl=30, show_spinner=False)
def list_models() -> list[dict]:
    return [dict(m) for m in api.list_models()]


@st.cache_resource(show_spinner=False)
def load_examples() -> list:
    return list(api.examples())


# ----------------------------------------------------------------------------------------------
# Session-state callbacks


def _apply_preset(groups: dict, num_ws: int, best: dict | None = None) -> None:
    preset = st.session_state["preset"]
    if preset == "custom":
        return
    rows = ui.preset_layers(preset, groups, num_ws)
    for i in range(num_ws):
        st.session_state[f"layer_{i}"] = i in rows
    if preset == "best" and best:  # the measured recipe (MANIFEST best_recipe) also sets the base and the edits
        st.session_state["base"] = best["base"]
        for attr, strength in best["edits"].items():
            st.session_state[f"edit_{attr}"] = float(strength)


def _layer_toggled(groups: dict, num_ws: int) -> None:
    chosen = [i for i in range(num_ws) if st.session_state.get(f"layer_{i}")]
    st.session_state["preset"] = ui.preset_of(chosen, groups)


def _use_example(slot: str, name: str) -> None:
    st.session_state[f"example_{slot}"] = name
    st.session_state[f"upgen_{slot}"] = st.session_state.get(f"upgen_{slot}", 0) + 1  # clears the uploader


def _use_pair(beard: str, shaved: str) -> None:
    _use_example("beard", beard)
    _use_example("shaved", shaved)


def _uploaded(slot: str) -> None:
    st.session_state.pop(f"example_{slot}", None)


# ----------------------------------------------------------------------------------------------
# Sidebar


def model_sidebar():
    """Model picker; returns (model, key) or (None, None) after showing why there is none."""
    sb = st.sidebar
    sb.header("Model")
    try:
        models = list_models()
    except Exception as exc:  # the registry itself is broken: still offer local files
        sb.warning(ui.user_message(exc, "Listing models"))
        models = []
    gens = [m for m in models if m.get("kind", "generator") in ("generator", "networks")]
    default = ui.default_model()
    choices = ui.model_choices(gens, default, ui.extra_model_paths())
    choice = sb.selectbox("Generator", choices, key="model_choice",
                          format_func=lambda c: ui.model_label(c, gens),
                          help="The bundled model, any downloaded official weights, or a local checkpoint.")
    if choice == ui.LOCAL_CHOICE:
        choice = sb.text_input("Checkpoint path", key="model_path",
                               placeholder="runs/…/network-snapshot-000200.safetensors",
                               help="NVIDIA .pkl, rosinality .pt or StyleMix .safetensors").strip()
        if not choice:
            sb.info("Type the path of a generator checkpoint.")
            return None, None
    sb.caption("Official FFHQ weights: `python -m stylemix fetch ffhq256 --allow-unverified`, "
               "then pick ffhq256 here.")
    why = ui.unavailable_message(choice, gens)
    if why:
        st.error(why)
        return None, None
    key = ui.model_key(choice)
    try:
        model = load_model(key)
    except Exception as exc:
        st.error(ui.user_message(exc, f"Loading the model '{choice}'")
                 + "\n\nPick another model in the sidebar or check the path.")
        return None, None
    sb.caption(ui.model_summary(model))
    return model, key


def settings_sidebar(model) -> dict:
    sb = st.sidebar
    out: dict = {}

    sb.header("Inversion")
    qualities = ui.qualities_for(model)
    if st.session_state.get("quality") not in qualities:
        st.session_state["quality"] = "balanced"
    out["quality"] = sb.radio("Quality", qualities, key="quality", horizontal=True,
                              help="fast: encoder only · balanced: encoder + short optimisation · "
                                   "best: long optimisation")
    if "fast" not in qualities:
        sb.caption(f"'fast' needs an encoder for this model: "
                   f"`python -m training.encoder --model {model.name}`")
    out["centre_crop"] = sb.checkbox("Use a centre crop when no face is found", key="centre_crop",
                                     help="For images that are already cropped to the face.")

    sb.header("Mixing")
    out["base"] = sb.radio("Base face", ui.SLOTS, key="base", format_func=lambda s: ui.SLOT_TITLES[s],
                           help="The face whose unchecked layers are kept.")
    other = ui.SLOT_TITLES[ui.other_slot(out["base"])]
    groups = {k: list(v) for k, v in model.layer_groups.items()}
    directions = list(getattr(model, "directions", None) or [])
    best = None
    recipe = getattr(model, "best_recipe", None)
    if recipe:  # the recipe a benchmark found best for this model (MANIFEST best_recipe)
        groups["best"] = list(recipe["layers"])
        edits = api.best_edits(model)
        best = {"base": recipe["base"], "edits": {a: edits.get(a, 0.0) for a in directions}}
    n = model.num_ws
    presets = ui.presets_for(groups)
    layout = (n, tuple((k, tuple(v)) for k, v in groups.items()))
    if st.session_state.get("_layout") != layout:  # first run or another model: start from a preset
        st.session_state["_layout"] = layout
        st.session_state["preset"] = "coarse" if "coarse" in presets else presets[0]
        _apply_preset(groups, n)
    out["preset"] = sb.radio("Layers from the other face", presets, key="preset", horizontal=True,
                             on_change=_apply_preset, args=(groups, n, best),
                             help="coarse 4-8 px (pose, head shape), middle 16-32 px (features, hair), "
                                  "fine 64 px and up (colour, texture)"
                                  + (" · best: the recipe measured for this model; it also sets the base face "
                                     "and the edit sliders" if best else ""))
    sb.caption(f"Checked layers come from the {other}; the rest from the {ui.SLOT_TITLES[out['base']]}.")
    for i, label in enumerate(model.layer_labels):
        sb.checkbox(label, key=f"layer_{i}", on_change=_layer_toggled, args=(groups, n))
    out["layers"] = [i for i in range(n) if st.session_state.get(f"layer_{i}")]
    out["truncation"] = sb.slider("Truncation ψ", 0.0, 1.0, 1.0, 0.05, key="truncation",
                                  help="Pulls the mixed latent towards the average face (1 = off).")

    sb.header("Edits")
    edits: dict[str, float] = {}
    limit = ui.edit_limit(best["edits"] if best else None)
    if not directions:
        sb.caption(f"No edit directions for this model: `python -m training.directions --model {model.name}`")
    for attr in directions:  # (the 'best' preset may have set them; another model may have a narrower range)
        key = f"edit_{attr}"
        st.session_state[key] = min(limit, max(-limit, float(st.session_state.get(key, 0.0))))
    for attr in [a for a in ui.MAIN_EDITS if a in directions]:
        edits[attr] = sb.slider(ui.MAIN_EDITS[attr], -limit, limit, step=0.25, key=f"edit_{attr}",
                                help="Moves the result along this attribute's direction in W "
                                     "(in standard deviations); works with or without mixing.")
    rest = [a for a in directions if a not in ui.MAIN_EDITS]
    if rest:
        with sb.expander("More edits"):
            for attr in rest:
                edits[attr] = st.slider(attr.replace("_", " "), -limit, limit, step=0.25, key=f"edit_{attr}")
    out["edits"] = {a: float(s) for a, s in edits.items() if s}
    return out


# ----------------------------------------------------------------------------------------------
# References


def show(image, caption: str, side: int = 256) -> None:
    """An image at `side` px on the page (small model outputs enlarged with crisp pixels), as PNG."""
    shown = ui.display_image(image, side)
    st.image(shown, caption=caption, width=min(side, max(shown.size)), output_format="PNG")


def slot_source(slot: str, examples: dict) -> tuple[str, bytes] | None:
    """The uploader for a slot; returns (label, bytes) of the upload or the chosen example."""
    gen = st.session_state.get(f"upgen_{slot}", 0)
    f = st.file_uploader(f"Upload the {ui.SLOT_TITLES[slot]}", type=ui.UPLOAD_TYPES, key=f"upload_{slot}_{gen}",
                         on_change=_uploaded, args=(slot,))
    if f is not None:
        return f.name, f.getvalue()
    name = st.session_state.get(f"example_{slot}")
    if name in examples:
        st.caption(f"Using the example face '{name}' (upload a file to replace it).")
        return f"example '{name}'", ui.example_bytes(examples[name])
    return None


def reference(slot: str, source, model, key: str, settings: dict):
    """Align + invert one reference, drawing it beside its reconstruction; the Latent or None."""
    title = ui.SLOT_TITLES[slot]
    if source is None:
        st.info(f"Upload a {title} (png, jpg, webp) or pick one from the examples below.")
        return None
    label, data = source
    c = caches()
    try:
        aligned = c["align"].get_or_compute(
            ("align", key, ui.bytes_key(data), settings["centre_crop"]),
            lambda: api.align(model, data, allow_centre_crop=settings["centre_crop"]))
    except Exception as exc:
        msg = ui.user_message(exc, f"The {title} ({label})")
        if isinstance(exc, ValueError) and not settings["centre_crop"] and "face" in str(exc).lower():
            msg += ("\n\nIf the image is already cropped to the face, tick 'Use a centre crop when no face "
                    "is found' in the sidebar.")
        st.error(msg)
        return None
    quality = settings["quality"]
    slot_box = st.empty()

    def run():
        bar = slot_box.progress(0.0, text=f"Inverting the {title} ({quality})…")

        def progress(fraction, text=""):
            bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"{title}: {text}" if text else title)

        return api.invert(model, aligned.image, quality=quality, progress=progress)

    try:
        latent = c["invert"].get_or_compute(
            ("invert", key, ui.image_key(aligned.image), quality), run,
            on_wait=lambda: slot_box.info("Waiting for another inversion on this server to finish…"))
    except Exception as exc:
        slot_box.empty()
        st.error(ui.user_message(exc, f"Inverting the {title}"))
        return None
    slot_box.empty()
    a, b = st.columns(2)
    with a:
        show(aligned.image, f"aligned ({aligned.method})", 192)
    with b:
        show(latent.image, f"reconstruction · distance {latent.distance:.3f} · {latent.psnr:.1f} dB", 192)
    return latent


def examples_gallery(examples: dict, *, expanded: bool) -> None:
    with st.expander("Example faces: try the app without uploading", expanded=expanded):
        if not examples:
            st.caption("No bundled example faces were found (assets/examples/).")
            return
        pair = ui.example_pair(examples.values())
        if pair:
            st.button("Try an example pair", key="example_pair", on_click=_use_pair, args=pair, type="primary")
        items = list(examples.values())
        per_row = min(len(items), 6)
        for start in range(0, len(items), per_row):
            cols = st.columns(per_row)
            for col, ex in zip(cols, items[start:start + per_row]):
                with col:
                    show(ex.image, f"{ex.name} ({ex.role})", 128)
                    st.button("as beard", key=f"ex_beard_{ex.name}", on_click=_use_example, args=("beard", ex.name))
                    st.button("as shaved", key=f"ex_shaved_{ex.name}", on_click=_use_example,
                              args=("shaved", ex.name))


# ----------------------------------------------------------------------------------------------
# Results


def score(model, image) -> dict | None:
    try:
        return api.score(model, image)
    except Exception:  # no classifier for this model: the result is still shown
        return None


def mix_view(model, key: str, latents: dict, settings: dict) -> None:
    base = settings["base"]
    other = ui.other_slot(base)
    ws_base, ws_other = latents[base].ws, latents[other].ws
    layers = settings["layers"]
    rkey = (key, ui.latent_key(ws_base), ui.latent_key(ws_other), tuple(layers), settings["truncation"],
            tuple(sorted(settings["edits"].items())))

    def compose():
        ws = api.mix(model, ws_base, ws_other, layers, truncation=settings["truncation"])
        if settings["edits"]:
            ws = api.edit(model, ws, settings["edits"])
        image = api.render(model, ws)
        return ws, image, score(model, image)

    try:
        ws, image, scores = caches()["render"].get_or_compute(("mix",) + rkey, compose)
    except Exception as exc:
        st.error(ui.user_message(exc, "Mixing"))
        return

    st.session_state["result"] = {"sha256": ui.image_key(image), "layers": list(layers), "base": base,
                                  "truncation": settings["truncation"], "edits": dict(settings["edits"]),
                                  "scores": dict(scores) if scores else None}
    st.subheader("Mixed face")
    left, right = st.columns([2, 1])
    with left:
        show(image, ui.mix_caption(base, layers, model.layer_labels, settings["edits"]), 384)
    with right:
        if scores:
            st.metric("P(beard)", f"{scores.get('has_beard', float('nan')):.2f}")
            st.metric("P(shaved)", f"{scores.get('shaved', float('nan')):.2f}")
            if getattr(scores, "note", None):
                st.caption(scores.note)
        else:
            st.caption("No attribute classifier for this model.")
        if settings["edits"]:
            st.caption("Edits: " + ", ".join(f"{a} {s:+.2f}" for a, s in settings["edits"].items()))
        st.download_button("Download PNG", api.png_bytes(image), file_name="stylemix.png", mime="image/png",
                           key="download_png")
        meta = {"model": model.name, "layers": layers, "base": base, "truncation": settings["truncation"],
                "edits": settings["edits"]}
        try:
            npz = api.npz_bytes(ws, **meta)
        except Exception as exc:
            st.caption(ui.user_message(exc, "Saving the latent"))
        else:
            st.download_button("Download ws (.npz)", npz, file_name="stylemix_ws.npz",
                               mime="application/octet-stream", key="download_npz")

    st.subheader("Layer strip")
    st.caption(f"The {ui.SLOT_TITLES[base]} with one layer at a time taken from the {ui.SLOT_TITLES[other]}.")
    try:
        strip = caches()["render"].get_or_compute(
            ("strip", key, ui.latent_key(ws_base), ui.latent_key(ws_other)),
            lambda: api.layer_strip(model, ws_base, ws_other))
    except Exception as exc:
        st.error(ui.user_message(exc, "The layer strip"))
        return
    per_row = min(len(strip), 10)
    for start in range(0, len(strip), per_row):
        for col, (label, img) in zip(st.columns(per_row), strip[start:start + per_row]):
            with col:
                show(img, label, 96)


def compare_view(model, key: str, latents: dict) -> None:
    st.subheader("Compare methods")
    st.caption("The same pair through every available method (beard reference as the base).")
    ws_b, ws_s = latents["beard"].ws, latents["shaved"].ws
    try:
        methods = list(api.methods(model))
    except Exception as exc:
        st.error(ui.user_message(exc, "Listing the methods"))
        methods = []
    per_row = 4
    for start in range(0, len(methods), per_row):
        for col, m in zip(st.columns(per_row), methods[start:start + per_row]):
            with col:
                try:
                    img, scores = caches()["render"].get_or_compute(
                        ("method", key, ui.latent_key(ws_b), ui.latent_key(ws_s), m.name),
                        lambda m=m: _run_method(model, m.name, ws_b, ws_s))
                except Exception as exc:
                    st.markdown(f"**{m.name}**")
                    st.warning(ui.user_message(exc, m.name))
                    continue
                show(img, m.name, 192)
                st.caption(" · ".join(x for x in (ui.scores_text(scores), m.description) if x))
    if not any(m.name.startswith("edit:") for m in methods):
        st.caption(f"W-space editing needs attribute directions for this model: "
                   f"`python -m training.directions --model {model.name}`")

    st.subheader("Comparison results")
    try:
        results = api.comparison_results()
    except Exception as exc:
        st.warning(ui.user_message(exc, "Reading the comparison results"))
        results = None
    if not results:
        st.caption("No comparison results yet (results/comparison); the comparison run of "
                   "training.evaluation writes them.")
        return
    st.caption(f"From {results.get('root', 'results/comparison')}")
    for name, rows in (results.get("tables") or {}).items():
        if rows:
            st.markdown(f"**{name}**")
            st.dataframe(rows, hide_index=True)
    for path in results.get("plots") or []:
        st.image(str(path), caption=Path(path).name)
    if results.get("metrics"):
        with st.expander("Metrics (JSON)"):
            st.json(results["metrics"], expanded=False)
    if results.get("report"):
        with st.expander("Report"):
            st.markdown(results["report"])


def _run_method(model, name: str, ws_b, ws_s):
    image = api.run_method(model, name, ws_b, ws_s)
    return image, score(model, image)


# ----------------------------------------------------------------------------------------------
# Page


def main() -> None:
    st.title("StyleMix")
    st.caption("Upload a bearded face and a shaved-head face, pick the layers to mix in the sidebar, "
               "and download a face that has both.")
    model, key = model_sidebar()
    if model is None:
        st.stop()
    settings = settings_sidebar(model)
    view = st.radio("View", ["Mix", "Compare methods"], key="view", horizontal=True,
                    label_visibility="collapsed")
    try:
        examples = {ex.name: ex for ex in load_examples()}
    except Exception as exc:
        st.warning(ui.user_message(exc, "Loading the example faces"))
        examples = {}

    cols = st.columns(2)
    sources = {}
    for slot, col in zip(ui.SLOTS, cols):
        with col:
            st.subheader(ui.SLOT_TITLES[slot].capitalize())
            sources[slot] = slot_source(slot, examples)
    examples_gallery(examples, expanded=not all(sources.values()))
    latents = {}
    for slot, col in zip(ui.SLOTS, cols):
        with col:
            latents[slot] = reference(slot, sources[slot], model, key, settings)
    if not all(latents.values()):
        return
    if view == "Mix":
        mix_view(model, key, latents, settings)
    else:
        compare_view(model, key, latents)


main()
