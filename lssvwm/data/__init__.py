from .dataset import EpisodeWindows
from .episodes import EpisodeFormatError, generate_dataset, load_episode, save_episode
from .maze import ACTION_NAMES, NUM_ACTIONS, ExplorationPolicy, MazeEnv

__all__ = ["ACTION_NAMES", "NUM_ACTIONS", "EpisodeFormatError", "EpisodeWindows", "ExplorationPolicy", "MazeEnv",
           "generate_dataset", "load_episode", "save_episode"]
