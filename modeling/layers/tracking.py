"""Making sublayers held in lists visible to tf.train.Checkpoint.

Keras 3 (TF backend) collects the weights of layers kept in a list or dict
attribute, but tf.train.Checkpoint does not see them: their variables are
silently missing from checkpoints (checked with Keras 3.15). Every layer that
keeps sublayers in a list therefore also sets each one as an attribute.
"""


def tracked_list(owner, name, sublayers):
  """Sets owner.<name>_<i> = sublayers[i] and returns the list.

  Args:
    owner: the keras.layers.Layer holding the sublayers.
    name: attribute prefix.
    sublayers: sequence of layers.
  Returns:
    list of the sublayers, to keep as the owner's list attribute too.
  """
  sublayers = list(sublayers)
  for i, layer in enumerate(sublayers):
    setattr(owner, f"{name}_{i}", layer)
  return sublayers
