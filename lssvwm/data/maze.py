"""A first-person 3D grid maze, rendered by a vectorised numpy raycaster.

In the spirit of Memory Maze (Pasukonis et al.), but with no heavy dependency, so that thousands of long,
action-labelled episodes can be generated on a laptop:

- ``make_layout``: a procedural grid maze (1 = wall) with loops: a depth-first perfect maze whose extra
  walls are knocked out with probability ``loop_prob``.
- ``MazeEnv``: a Gymnasium environment with continuous pose, collisions, and Memory Maze's six discrete
  actions (noop, forward, turn left, turn right, forward+left, forward+right).
- ``ExplorationPolicy``: the scripted policy used for Memory Maze's offline data (pick a random goal cell,
  follow the shortest path, occasional random action bursts) so that trajectories revisit places.

Places are made distinguishable (so that remembering them is both possible and necessary): every wall cell
gets its own colour from a palette, the floor is a checkerboard, and a few coloured objects stand in the maze.

Coordinates: ``layout[row, col]``; a point ``(x, y)`` lies in cell ``(row=floor(y), col=floor(x))``;
heading ``angle`` is measured from the +x axis towards +y.
"""
from __future__ import annotations

import inspect
from collections import deque

import gymnasium as gym
import numpy as np

ACTION_NAMES = ("noop", "forward", "turn_left", "turn_right", "forward_left", "forward_right")
NUM_ACTIONS = len(ACTION_NAMES)
# (move forward?, turn direction) per action; turn_left decreases the heading angle.
_ACTION_TABLE = np.array([(0, 0), (1, 0), (0, -1), (0, 1), (1, -1), (1, 1)], dtype=np.float64)
# The action that undoes each one (-1: none in this action set, which has no backward move), for training on
# clips played backwards (diffusion.inverse_actions): turns undo each other, a noop undoes itself.
INVERSE_ACTIONS = (0, -1, 3, 2, -1, -1)

# Saturated, mutually distinct wall colours (RGB, 0..255).
WALL_PALETTE = np.array(
    [
        [230, 60, 60], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40],
    ],
    dtype=np.float32,
)
OBJECT_COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]],
                         dtype=np.float32)
_FLOOR = np.array([[120, 110, 100], [85, 80, 75]], dtype=np.float32)  # checkerboard tones
_CEIL_TOP, _CEIL_HORIZON = np.array([40, 50, 90], np.float32), np.array([120, 130, 160], np.float32)


def make_layout(size: int, rng: np.random.Generator, loop_prob: float = 0.2) -> np.ndarray:
    """A ``(size, size)`` uint8 grid, 1 = wall, with a solid border and loops.

    Open cells lie on odd coordinates joined by a randomised depth-first search; each remaining inner wall
    between two open cells is then removed with probability ``loop_prob``, which creates cycles.
    """
    if size < 5 or size % 2 == 0:
        raise ValueError(f"maze size must be an odd integer >= 5, got {size}")
    grid = np.ones((size, size), dtype=np.uint8)
    start = (1, 1)
    grid[start] = 0
    stack = [start]
    while stack:
        r, c = stack[-1]
        nbrs = [(r + dr, c + dc, r + dr // 2, c + dc // 2) for dr, dc in ((2, 0), (-2, 0), (0, 2), (0, -2))
                if 0 < r + dr < size - 1 and 0 < c + dc < size - 1 and grid[r + dr, c + dc] == 1]
        if not nbrs:
            stack.pop()
            continue
        nr, nc, wr, wc = nbrs[rng.integers(len(nbrs))]
        grid[wr, wc] = 0
        grid[nr, nc] = 0
        stack.append((nr, nc))
    # Knock out walls that separate two open cells (horizontally or vertically) to make loops.
    for r in range(1, size - 1):
        for c in range(1, size - 1):
            if grid[r, c] == 1 and (r % 2) != (c % 2):
                between_h = grid[r, c - 1] == 0 and grid[r, c + 1] == 0
                between_v = grid[r - 1, c] == 0 and grid[r + 1, c] == 0
                if (between_h or between_v) and rng.random() < loop_prob:
                    grid[r, c] = 0
    return grid


def bfs_distances(layout: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Shortest-path distance (in cells, 4-connected) from every open cell to ``goal``; -1 if unreachable."""
    dist = np.full(layout.shape, -1, dtype=np.int64)
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nr, nc = r + dr, c + dc
            if layout[nr, nc] == 0 and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


class Raycaster:
    """Renders first-person views of a layout; all columns (rays) are processed at once with numpy."""

    def __init__(self, layout: np.ndarray, wall_colors: np.ndarray, objects: np.ndarray, object_colors: np.ndarray,
                 resolution: int = 64, fov_deg: float = 80.0):
        self.layout = layout
        self.wall_colors = wall_colors  # (S, S, 3) colour of each wall cell
        self.objects = objects  # (K, 2) object centres (x, y)
        self.object_colors = object_colors  # (K, 3)
        self.res = resolution
        self.plane_len = np.tan(np.deg2rad(fov_deg) / 2)
        w = h = resolution
        self.cam = 2.0 * (np.arange(w) + 0.5) / w - 1.0  # (W,) camera-plane coordinate of each column
        rows = np.arange(h)[:, None] + 0.5  # (H, 1)
        self.rows = rows
        # Focal length in pixels so that walls one unit away fill the view height / plane_len.
        self.focal = (w / 2) / self.plane_len
        half = h // 2
        # Floor casting: distance along the view ray of every floor row (rows below the horizon).
        self.floor_rows = np.arange(half, h) + 0.5  # (H/2,)
        self.floor_dist = (0.5 * self.focal) / (self.floor_rows - h / 2)  # camera height 0.5
        frac = (rows[:half, 0] / half)[:, None, None]  # (H/2, 1, 1), 0 at the top, 1 at the horizon
        self.ceiling = (_CEIL_TOP * (1 - frac) + _CEIL_HORIZON * frac) * np.ones((1, w, 1), np.float32)
        self.max_steps = 2 * layout.shape[0] + 2

    def render(self, pos: np.ndarray, angle: float) -> np.ndarray:
        """``(H, W, 3)`` uint8 view from ``pos = (x, y)`` looking along ``angle`` (radians)."""
        h = w = self.res
        lay = self.layout
        size = lay.shape[0]
        dx, dy = np.cos(angle), np.sin(angle)
        plx, ply = -dy * self.plane_len, dx * self.plane_len
        rdx = dx + plx * self.cam  # (W,)
        rdy = dy + ply * self.cam
        px, py = float(pos[0]), float(pos[1])
        mapx = np.full(w, int(np.floor(px)), dtype=np.int64)
        mapy = np.full(w, int(np.floor(py)), dtype=np.int64)
        with np.errstate(divide="ignore"):
            ddx = np.where(rdx == 0, 1e30, np.abs(1.0 / rdx))
            ddy = np.where(rdy == 0, 1e30, np.abs(1.0 / rdy))
        stepx = np.where(rdx < 0, -1, 1)
        stepy = np.where(rdy < 0, -1, 1)
        sdx = np.where(rdx < 0, (px - mapx) * ddx, (mapx + 1.0 - px) * ddx)
        sdy = np.where(rdy < 0, (py - mapy) * ddy, (mapy + 1.0 - py) * ddy)
        hit = np.zeros(w, dtype=bool)
        side = np.zeros(w, dtype=np.int64)
        for _ in range(self.max_steps):  # digital differential analysis, all rays in lock-step
            go_x = (sdx < sdy) & ~hit
            go_y = ~(sdx < sdy) & ~hit
            sdx = np.where(go_x, sdx + ddx, sdx)
            mapx = np.where(go_x, mapx + stepx, mapx)
            sdy = np.where(go_y, sdy + ddy, sdy)
            mapy = np.where(go_y, mapy + stepy, mapy)
            side = np.where(go_x, 0, np.where(go_y, 1, side))
            np.clip(mapx, 0, size - 1, out=mapx)
            np.clip(mapy, 0, size - 1, out=mapy)
            hit |= lay[mapy, mapx] == 1
            if hit.all():
                break
        dist = np.where(side == 0, sdx - ddx, sdy - ddy)
        dist = np.maximum(dist, 1e-3)  # (W,) perpendicular wall distance = depth buffer
        # Where along the wall face the ray hit (0..1), for the dark seams between wall cells.
        wall_u = np.where(side == 0, py + dist * rdy, px + dist * rdx)
        wall_u = wall_u - np.floor(wall_u)
        col = self.wall_colors[mapy, mapx]  # (W, 3)
        shade = (1.0 / (1.0 + 0.12 * dist)) * np.where(side == 1, 0.8, 1.0)
        shade = shade * np.where((wall_u < 0.04) | (wall_u > 0.96), 0.55, 1.0)
        col = col * shade[:, None]
        line = self.focal / dist  # wall height in pixels (wall height 1, camera at 0.5)
        top = h / 2 - line / 2
        bottom = h / 2 + line / 2
        # Floor: checkerboard cast onto the ground plane, darkened with distance.
        fd = self.floor_dist[:, None]  # (H/2, 1)
        fx = px + fd * rdx[None, :]
        fy = py + fd * rdy[None, :]
        checker = (np.floor(fx).astype(np.int64) + np.floor(fy).astype(np.int64)) & 1
        floor = _FLOOR[checker] * (1.0 / (1.0 + 0.12 * fd))[..., None]
        img = np.concatenate([self.ceiling, floor], axis=0)  # (H, W, 3)
        wall_mask = (self.rows >= top[None, :]) & (self.rows <= bottom[None, :])  # (H, W)
        img = np.where(wall_mask[..., None], col[None, :, :], img)
        img = self._draw_objects(img, px, py, dx, dy, plx, ply, dist)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw_objects(self, img, px, py, dx, dy, plx, ply, zbuf):
        if len(self.objects) == 0:
            return img
        h = w = self.res
        inv_det = 1.0 / (plx * dy - dx * ply)
        rel = self.objects - np.array([px, py])  # (K, 2)
        tx = inv_det * (dy * rel[:, 0] - dx * rel[:, 1])
        ty = inv_det * (-ply * rel[:, 0] + plx * rel[:, 1])  # depth
        cols = np.arange(w)[None, :] + 0.5
        for k in np.argsort(-ty):  # far to near
            if ty[k] < 0.15:
                continue
            sx = w / 2 * (1 + tx[k] / ty[k])
            radius = 0.18 * self.focal / ty[k]  # object: a ball of radius 0.18 resting at height 0.3
            cy = h / 2 + (0.5 - 0.3) * self.focal / ty[k]
            disc = (cols - sx) ** 2 + (self.rows - cy) ** 2 <= radius**2  # (H, W)
            disc &= (ty[k] < zbuf)[None, :]
            if disc.any():
                shade = 1.0 / (1.0 + 0.12 * ty[k])
                img = np.where(disc[..., None], self.object_colors[k] * shade, img)
        return img


class MazeEnv(gym.Env):
    """First-person maze with Memory Maze's discrete action set.

    ``reset(seed=s)`` builds a new maze, colours and object placement from ``s`` (deterministic);
    ``reset(seed=s, options={"maze_seed": m})`` builds the maze from ``m`` and only the start pose from ``s``.
    Observations: ``image`` (H, W, 3) uint8, ``agent_pos`` (2,), ``agent_dir`` (2,) unit vector,
    ``maze_layout`` (S, S) uint8 (1 = wall). Reward is 1 when the agent touches the current target object
    (then a new target is drawn), as in Memory Maze; episodes are truncated after ``max_steps``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, size: int = 9, resolution: int = 64, n_objects: int = 3, loop_prob: float = 0.2,
                 max_steps: int = 1000, move_step: float = 0.2, turn_step_deg: float = 15.0,
                 agent_radius: float = 0.2, fov_deg: float = 80.0, render_mode: str | None = "rgb_array"):
        if resolution < 8 or resolution % 2:
            raise ValueError(f"resolution must be an even integer >= 8, got {resolution}")
        self.size, self.resolution, self.n_objects = size, resolution, n_objects
        self.loop_prob, self.max_steps = loop_prob, max_steps
        self.move_step, self.turn_step = move_step, np.deg2rad(turn_step_deg)
        steps = 2 * np.pi / self.turn_step  # the heading is counted in turn steps, modulo a full turn where they fit
        self._circle = round(steps) if abs(steps - round(steps)) < 1e-9 else 0
        self.radius, self.fov_deg = agent_radius, fov_deg
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (resolution, resolution, 3), np.uint8),
            "agent_pos": gym.spaces.Box(0.0, float(size), (2,), np.float64),
            "agent_dir": gym.spaces.Box(-1.0, 1.0, (2,), np.float64),
            "maze_layout": gym.spaces.Box(0, 1, (size, size), np.uint8),
        })
        self.layout: np.ndarray | None = None

    # -- episode set-up -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        maze_seed = (options or {}).get("maze_seed")
        mrng = rng if maze_seed is None else np.random.default_rng(maze_seed)
        self.layout = make_layout(self.size, mrng, self.loop_prob)
        open_cells = np.argwhere(self.layout == 0)
        self.wall_colors = WALL_PALETTE[mrng.integers(len(WALL_PALETTE), size=self.layout.shape)]
        picks = mrng.choice(len(open_cells), size=self.n_objects, replace=False)
        self.objects = open_cells[picks][:, ::-1] + 0.5  # (K, 2) as (x, y) cell centres
        self.object_colors = OBJECT_COLORS[np.arange(self.n_objects) % len(OBJECT_COLORS)]
        r, c = open_cells[rng.integers(len(open_cells))]
        self.pos = np.array([c + 0.5, r + 0.5], dtype=np.float64)
        self._angle0, self._turns = float(rng.integers(4) * np.pi / 2), 0
        self.angle = self._angle0
        self.target = int(rng.integers(self.n_objects)) if self.n_objects else -1
        self.t = 0
        self.caster = Raycaster(self.layout, self.wall_colors, self.objects, self.object_colors,
                                self.resolution, self.fov_deg)
        return self._obs(), {"target": self.target}

    # -- dynamics -------------------------------------------------------------------------------------
    def fits(self, x: float, y: float) -> bool:
        """Whether the agent (a square of half-side ``agent_radius``) fits at ``(x, y)`` without touching a wall."""
        r = self.radius
        for cx in (x - r, x + r):
            for cy in (y - r, y + r):
                if self.layout[int(np.floor(cy)), int(np.floor(cx))] == 1:
                    return False
        return True

    def step(self, action):
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        action = int(action)
        if not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"action must be an integer in [0, {NUM_ACTIONS}), got {action}")
        move, turn = _ACTION_TABLE[action]
        # The heading from a count of turn steps, not summed turn by turn: the same heading is then the same float
        # (summed, 180 degrees could come out as pi - 1e-15 one time and pi + 1e-15 the next, and a ray along a
        # wall's edge renders either side of it), so a view seen again after a full turn is rendered exactly again.
        self._turns += turn
        if self._circle:  # the turn step divides a full turn: count modulo it
            self._turns %= self._circle
        self.angle = float((self._angle0 + self._turns * self.turn_step) % (2 * np.pi))
        if move:
            dx, dy = self.move_step * np.cos(self.angle), self.move_step * np.sin(self.angle)
            # Slide along walls: try each axis separately.
            if self.fits(self.pos[0] + dx, self.pos[1]):
                self.pos[0] += dx
            if self.fits(self.pos[0], self.pos[1] + dy):
                self.pos[1] += dy
        reward = 0.0
        if self.target >= 0 and np.linalg.norm(self.objects[self.target] - self.pos) < 0.45:
            reward = 1.0
            self.target = int(self.np_random.integers(self.n_objects))
        self.t += 1
        return self._obs(), reward, False, self.t >= self.max_steps, {"target": self.target}

    def render_view(self, pos, angle: float) -> np.ndarray:
        """Render the first-person view at any pose (used to build evaluation ground truth)."""
        return self.caster.render(np.asarray(pos, dtype=np.float64), angle)

    def render(self):
        return self.render_view(self.pos, self.angle)

    def cell(self) -> tuple[int, int]:
        return int(np.floor(self.pos[1])), int(np.floor(self.pos[0]))

    def _obs(self):
        return {
            "image": self.render(),
            "agent_pos": self.pos.copy(),
            "agent_dir": np.array([np.cos(self.angle), np.sin(self.angle)]),
            "maze_layout": self.layout.copy(),
        }


class ExplorationPolicy:
    """Memory Maze's offline-data policy: go to random goal cells by shortest path, with action noise.

    ``env`` needs ``layout`` (1 = wall, indexed [row=y, col=x]), ``pos`` (x, y), ``angle`` and ``cell()``; an env
    with ``right_turn_increases_angle = False`` (angles counter-clockwise, y up) gets its turns mirrored.

    With probability ``random_prob`` per step a burst of ``random_steps`` uniformly random actions starts.
    A new goal is drawn on arrival or when no progress is made for ``patience`` steps. ``spin_prob``: on arrival,
    the chance that the agent first looks around, ``spin_turns`` full turns in place (Memory Maze's policy never
    does): from the second turn on every view comes back exactly, as many frames after it was in sight as a turn
    takes (24 at 15 degrees a step), so such data asks a model to remember beyond a short attention window.
    """

    def __init__(self, env: MazeEnv, rng: np.random.Generator, random_prob: float = 0.02, random_steps: int = 5,
                 patience: int = 40, spin_prob: float = 0.0, spin_turns: int = 2):
        if not 0.0 <= spin_prob <= 1.0:
            raise ValueError(f"spin_prob must be in [0, 1], got {spin_prob}")
        if spin_turns < 1:
            raise ValueError(f"spin_turns must be at least 1, got {spin_turns}")
        self.env, self.rng = env, rng
        self.random_prob, self.random_steps, self.patience = random_prob, random_steps, patience
        self.spin_prob, self.spin_turns = spin_prob, spin_turns
        self.goal = None
        self.burst = 0
        self.spin: list[int] = []  # the turn actions of a look-around still to do

    def _new_goal(self):
        cells = np.argwhere(self.env.layout == 0)
        here = self.env.cell()
        while True:
            g = tuple(int(v) for v in cells[self.rng.integers(len(cells))])
            if g != here:
                break
        self.set_goal(g)

    def set_goal(self, goal: tuple[int, int] | None) -> None:
        """Walk to ``goal`` (row, col) by the shortest path from here on; None: the policy picks its own goals."""
        self.goal = goal
        if goal is not None:
            self.dist = bfs_distances(self.env.layout, goal)
            self.best, self.since_progress = self.dist[self.env.cell()], 0

    def __call__(self) -> int:
        env = self.env
        if self.spin:  # a look-around is done whole: no random actions inside it
            return self.spin.pop()
        if self.burst > 0:
            self.burst -= 1
            return int(self.rng.integers(NUM_ACTIONS))
        if self.rng.random() < self.random_prob:
            self.burst = self.random_steps - 1
            return int(self.rng.integers(NUM_ACTIONS))
        here = env.cell()
        # no draw from the rng at spin_prob 0: episodes made before the option stay the same
        if self.spin_prob and here == self.goal and self.rng.random() < self.spin_prob:
            self.spin = [int(self.rng.choice((2, 3)))] * (self.spin_turns * turn_steps(env))  # left or right
            self.goal = None  # then a new goal
            return self.spin.pop()
        if self.goal is None or here == self.goal or self.since_progress > self.patience:
            self._new_goal()
        d = self.dist[here]
        if d < self.best:
            self.best, self.since_progress = d, 0
        else:
            self.since_progress += 1
        # Next cell on a shortest path (ties broken by a fixed order, so the policy is deterministic).
        r, c = here
        nxt = min(((r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                   if self.dist[r + dr, c + dc] >= 0), key=lambda rc: self.dist[rc])
        if d <= 0:
            nxt = here
        tx, ty = nxt[1] + 0.5, nxt[0] + 0.5
        err = np.arctan2(ty - env.pos[1], tx - env.pos[0]) - env.angle
        err = (err + np.pi) % (2 * np.pi) - np.pi
        if not getattr(env, "right_turn_increases_angle", True):  # y-up worlds (the real Memory Maze)
            err = -err
        if abs(err) > np.deg2rad(50):
            return 3 if err > 0 else 2  # turn right / left
        if abs(err) > np.deg2rad(10):
            return 5 if err > 0 else 4
        return 1


def turn_steps(env) -> int:
    """The steps a full turn in place takes in ``env``."""
    return int(round(2 * np.pi / env.turn_step))


# the exploration policy's settings a dataset records (``meta.json``'s ``policy``): the rest are Memory Maze's
POLICY_DEFAULTS = {"spin_prob": 0.0, "spin_turns": 2}


def policy_settings(**overrides) -> dict:
    """:data:`POLICY_DEFAULTS`, then ``overrides`` (checked: only those names)."""
    unknown = set(overrides) - set(POLICY_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown exploration policy settings {sorted(unknown)}; known: {sorted(POLICY_DEFAULTS)}")
    return {**POLICY_DEFAULTS, **overrides}


def maze_settings(**overrides) -> dict:
    """Every constructor setting of :class:`MazeEnv` that shapes the world (its defaults, then ``overrides``)."""
    params = inspect.signature(MazeEnv.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "max_steps", "render_mode")}
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown maze settings {sorted(unknown)}; MazeEnv takes {sorted(defaults)}")
    return {**defaults, **overrides}
