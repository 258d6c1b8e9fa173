"""tf.data input pipelines: readers, tf.Example decoders, parsers, dataset makers."""
