"""Pretrained generators: each name returns the folder of a generator export (`generator.json` +
`generator.msgpack`, ferjax.train.generator_export) that `balance_fer2013` and `reproduce_paper`
read through `--config.generator_checkpoint=NAME` (a folder path works there too).

Kept apart from the pretrained classifiers, which the Analyzer, `/v1/models` and model export loop
over. A shipped generator registers here with its model card beside its files; none is shipped yet,
so a name resolves only once registered (here or by a plugin)."""
