"""fedvlp's ML library: data, models, objectives, local training, checkpoints, evaluation.

Never imports Flower, so it works alone (central training, tests, notebooks).
"""
