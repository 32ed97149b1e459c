"""mkdocs-gen-files script: the pages generated from the code at build time (nothing generated is committed).
The variant catalogue (variants/) from the registry and conf/, the parameter reference from config.py and dvc.yaml:
src/ptqflow/catalogue.py writes them."""

import mkdocs_gen_files

from ptqflow import console

console.quiet()  # the libraries' known load-time messages (torchao, pytree), as in every stage

from ptqflow.catalogue import pages  # noqa: E402

for path, text in pages().items():
    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)
