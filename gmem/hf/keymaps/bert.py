"""BertModel / RobertaModel and their ForSequenceClassification <-> gmem.models.bert.

One encoder table, placed under a prefix per architecture: BertModel files hold
"embeddings...." (gmem "embeddings/..."), BertForSequenceClassification files hold
"bert.embeddings...." (gmem "bert/embeddings/..."), RoBERTa the same with "roberta.". The base
models also import files that carry the prefix (e.g. saved from BertForPreTraining); export
writes the unprefixed names, as HF's BertModel.save_pretrained does. Linear weights are
transposed; LayerNorm weight/bias become scale/bias.
"""

from gmem.hf.keymap import Rule


def encoder_rules(hf_prefix: str = "", gmem_prefix: str = "") -> tuple:
    h, g = hf_prefix, gmem_prefix
    lin = lambda hf, gm: (Rule(f"{h}{hf}.weight", f"{g}{gm}/kernel", "T"), Rule(f"{h}{hf}.bias", f"{g}{gm}/bias"))
    norm = lambda hf, gm: (Rule(f"{h}{hf}.weight", f"{g}{gm}/scale"), Rule(f"{h}{hf}.bias", f"{g}{gm}/bias"))
    e, layer = "embeddings", "encoder.layer.{i}"
    return (
        Rule(f"{h}{e}.{{t}}_embeddings.weight", f"{g}{e}/{{t}}_embeddings/embedding"),
        *norm(f"{e}.LayerNorm", f"{e}/LayerNorm"),
        *lin(f"{layer}.attention.self.{{p}}", "encoder/layer_{i}/attention/self/{p}"),
        *lin(f"{layer}.attention.output.dense", "encoder/layer_{i}/attention/output/dense"),
        *norm(f"{layer}.attention.output.LayerNorm", "encoder/layer_{i}/attention/output/LayerNorm"),
        *lin(f"{layer}.intermediate.dense", "encoder/layer_{i}/intermediate/dense"),
        *lin(f"{layer}.output.dense", "encoder/layer_{i}/output/dense"),
        *norm(f"{layer}.output.LayerNorm", "encoder/layer_{i}/output/LayerNorm"),
        *lin("pooler.dense", "pooler/dense"),
    )


BERT_MODEL = encoder_rules() + encoder_rules("bert.")
ROBERTA_MODEL = encoder_rules() + encoder_rules("roberta.")

BERT_SEQUENCE_CLASSIFICATION = encoder_rules("bert.", "bert/") + (
    Rule("classifier.weight", "classifier/kernel", "T"),
    Rule("classifier.bias", "classifier/bias"),
)

ROBERTA_SEQUENCE_CLASSIFICATION = encoder_rules("roberta.", "roberta/") + (
    Rule("classifier.{p}.weight", "classifier/{p}/kernel", "T"),
    Rule("classifier.{p}.bias", "classifier/{p}/bias"),
)

# Buffers some files carry, and pre-training heads when a BertForPreTraining / ForMaskedLM file
# is loaded as the base model (family picked by model_type).
IGNORE = (r"((bert|roberta)\.)?embeddings\.(position_ids|token_type_ids)", r"cls\..*", r"lm_head\..*")
