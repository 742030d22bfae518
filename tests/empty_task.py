"""A seqio task whose train split is empty (for the CLI's bad-input test;
imported with --module_import=empty_task)."""
import seqio
import tensorflow.compat.v1 as tf

seqio.TaskRegistry.add(
    "switch_mtf_test_empty",
    source=seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"inputs": tf.zeros([0], tf.string),
             "targets": tf.zeros([0], tf.string)}),
        splits=("train", "validation")),
    preprocessors=[seqio.preprocessors.tokenize],
    output_features={
        "inputs": seqio.Feature(seqio.ByteVocabulary()),
        "targets": seqio.Feature(seqio.ByteVocabulary())})
