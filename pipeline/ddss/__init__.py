"""DDSS: learn GGDM samplers by differentiating through sample quality (Watson et al., ICLR 2022).

    result = ddss.search(ddss.load_config("configs/ddss_search.yaml", {"teacher": RUN_DIR, "steps": 5}))
    params = ddss.load_ggdm(result["artefact"])
    x0 = samplers.sample("ggdm", eps_fn, sched, x_T, steps=5, key=key, params=params)
"""
from pipeline.ddss.artefact import load_artefact, load_ggdm, save_artefact
from pipeline.ddss.config import SearchConfig
from pipeline.ddss.config import load as load_config
from pipeline.ddss.search import SearchDiverged, search, search_loop
from pipeline.samplers.ggdm import VARIANTS, init_params

__all__ = ["VARIANTS", "SearchConfig", "SearchDiverged", "init_params", "load_artefact", "load_config", "load_ggdm",
           "save_artefact", "search", "search_loop"]
