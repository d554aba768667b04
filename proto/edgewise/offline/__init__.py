"""Work on files, away from any serving node: making bundles (synthetic, or from an invoice export in
the Online Retail shape), checking them, and evaluating recommendations and policies offline (HR@k and
NDCG@k on a time split; off-policy estimates from logged propensities).

Modules: `synth` (the synthetic bundle generator, used by `edgewise demo` and `bundle synth`), `retail`
(the invoice importer), `evaluation` (offline evaluation), `report_chart` (report charts, with
matplotlib), and the commands over them: `bundle_cli` (`bundle synth / validate`), `retail_cli`
(`bundle from-retail`, `eval offline`), `ope_cli` (`eval ope`).
"""
