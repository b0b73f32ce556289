"""The model service: every weight file the engine uses is located, converted, checked and loaded here.

Getting a component (the one way in; `Session.models` is the session's service):

    from engine.models.service import ModelService

    models = ModelService(config)               # EngineConfig: models folder, user paths, device, dtype
    e4e = models.load("e4e")                    # nn.Module, float32, on config.device; cached
    parser = models.load("parser")              # ParseNet; models.find("parser") is None when absent
    preview = models.load("stylegan_preview")   # StyleGANPreview from the e4e file's decoder
    path = models.runtime_path("adapter")       # the safetensors file to open (a pickle is converted once)
    folder = models.locate("sd15")              # where it is, or ModelMissing with where/how to get it
    pipe = models.get(("pipeline",), make)      # cache anything built from components (make() runs once)

`load(name, backend=..., device=..., dtype=...)` keys its cache by (component, file, backend, device,
dtype); add a component (or another backend's loader for one) to `engine.models.service.COMPONENTS`.

Parts, lowest first (none imports torch at module level):

* `manifest`  — the entries of `resources/models.toml` and their schema;
* `folder`    — which models folder and why; user paths (relative to the current directory);
* `safe_load` — the one safetensors header parser, weights-only pickles, layout checks;
* `locate`    — a role → a file: a path the user gave, else the manifest's file in the models folder;
* `convert`   — pickle → safetensors, once;
* `converted` — the `.converted/` store (pickles that are not the manifest's own files), and its cleaning;
* `verify`    — sizes, structure and sha256 with a hash cache; `check_models` for `wplus models`;
* `fetch`, `importer` — filling the folder (download; copy from a folder, drive or .zip);
* `service`   — `ModelService`, built on the above.

Network-specific layouts sit next to their networks (`engine.networks.e4e.load_e4e_checkpoint`,
`engine.networks.wplus.load_adapter_checkpoint`, `engine.networks.parsenet.load_parsenet`).
"""
