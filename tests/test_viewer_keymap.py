"""Key map -> actions for every action kind, and the gymnasium `play` table built from it."""

import numpy as np
import pytest

pygame = pytest.importorskip("pygame")

from worldsdk.config import WORLD_PRESETS, ActionSpec, WorldSpec  # noqa: E402
from worldsdk.viewer.keymap import KeyMap, key_code, keys_to_action, parse_chord  # noqa: E402

K = pygame


def spec_with(action: ActionSpec, key_map: dict) -> WorldSpec:
    return WorldSpec(name="t", height=16, width=16, action=action, key_map=key_map)


def test_key_names_are_pygame_constants():
    assert key_code("left") == K.K_LEFT
    assert key_code("space") == K.K_SPACE
    assert key_code("w") == K.K_w
    assert key_code("LShift") == K.K_LSHIFT
    assert parse_chord("space+right") == {K.K_SPACE, K.K_RIGHT}
    with pytest.raises(ValueError, match="unknown key name"):
        key_code("leftt")


def test_discrete_default_preset():
    km = KeyMap.from_spec(WORLD_PRESETS["tiny"])
    assert km.action(set()) == 0  # "none"
    assert km.action({K.K_SPACE}) == 1
    assert km.action({K.K_RIGHT}) == 2 and km.action({K.K_UP}) == 2
    assert km.action({K.K_LEFT}) == 3 and km.action({K.K_DOWN}) == 3
    assert km.action({K.K_x}) == 0  # unbound keys are ignored
    # rivals: the latest pressed wins; without press times, the one listed first in the key map
    assert km.action({K.K_LEFT, K.K_RIGHT}, pressed_at={K.K_RIGHT: 1.0, K.K_LEFT: 2.0}) == 3
    assert km.action({K.K_LEFT, K.K_RIGHT}, pressed_at={K.K_RIGHT: 2.0, K.K_LEFT: 1.0}) == 2
    assert km.action({K.K_LEFT, K.K_RIGHT}) == 2
    assert km.label(2) == "2 (right/up)" and km.label(0) == "0 (none)"


def test_discrete_chords_beat_single_keys():
    km = KeyMap(ActionSpec.discrete(6), {"none": 0, "space": 1, "right": 2, "left": 3, "space+right": 4, "space+left": 5})
    assert km.action({K.K_SPACE, K.K_RIGHT}) == 4
    assert km.action({K.K_SPACE, K.K_LEFT}) == 5
    assert km.action({K.K_SPACE}) == 1


def test_multi_binary_sets_bits():
    km = KeyMap(ActionSpec.multi_binary(4), {"w": 0, "s": 1, "a": 2, "d": 3, "space": [0, 3]})
    np.testing.assert_array_equal(km.action(set()), [0, 0, 0, 0])
    np.testing.assert_array_equal(km.action({K.K_w, K.K_d}), [1, 0, 0, 1])
    np.testing.assert_array_equal(km.action({K.K_SPACE}), [1, 0, 0, 1])
    assert km.action({K.K_w}).dtype == np.int8
    idle = KeyMap(ActionSpec.multi_binary(3), {"none": [0, 0, 1], "w": 0})  # "none" is a whole action: n bits
    np.testing.assert_array_equal(idle.action(set()), [0, 0, 1])
    np.testing.assert_array_equal(idle.action({K.K_w}), [1, 0, 0])


def test_box_takes_mouse_motion():
    km = KeyMap(ActionSpec.box((2,), -1.0, 1.0), {}, mouse_range=100)
    np.testing.assert_allclose(km.action(set()), [0, 0])
    np.testing.assert_allclose(km.action(set(), (50, -25)), [0.5, -0.25])
    np.testing.assert_allclose(km.action(set(), (500, -500)), [1, -1])  # clipped
    km01 = KeyMap(ActionSpec.box((2,), 0.0, 2.0), {}, mouse_range=100)
    np.testing.assert_allclose(km01.action(set(), (50, -50)), [1.0, 0.0])  # no motion = no-op = low end


def test_dict_keyboard_and_mouse():
    action = ActionSpec.dict(keyboard=ActionSpec.multi_binary(4), mouse=ActionSpec.box((2,)))
    km = KeyMap(action, {"w": 0, "s": 1, "a": 2, "d": 3}, mouse_range=10)
    a = km.action({K.K_a}, (5, 0))
    np.testing.assert_array_equal(a["keyboard"], [0, 0, 1, 0])
    np.testing.assert_allclose(a["mouse"], [0.5, 0])
    action.validate(a)
    assert km.uses_mouse


@pytest.mark.parametrize("action, key_map, match", [
    (ActionSpec.discrete(3), {"left": 3}, "action index"),
    (ActionSpec.multi_binary(2), {"left": 2}, "bit indices"),
    (ActionSpec.box((2,)), {"left": 0}, "no keyboard part"),
    (ActionSpec.box((3,)), {}, "shape \\(2,\\)"),
    (ActionSpec.discrete(3), {"escape": 1}, "viewer control keys"),
    (ActionSpec.discrete(3), {"lefty": 1}, "unknown key name"),
])
def test_bad_key_maps_are_refused(action, key_map, match):
    with pytest.raises(ValueError, match=match):
        KeyMap(action, key_map)


@pytest.mark.parametrize("action, key_map", [
    (ActionSpec.discrete(6), {"none": 0, "space": 1, "right": 2, "up": 2, "left": 3, "down": 3}),
    (ActionSpec.multi_binary(4), {"w": 0, "s": 1, "a": 2, "d": 3}),
    (ActionSpec.dict(keyboard=ActionSpec.discrete(3), mouse=ActionSpec.box((2,))), {"a": 1, "d": 2}),
])
def test_keys_to_action_table_is_valid_for_gymnasium(action, key_map):
    spec = spec_with(action, key_map)
    table = keys_to_action(spec)
    space = action.to_space()
    km = KeyMap.from_spec(spec)
    assert len(table) == 2 ** len(km.keys) - 1  # every chord of the bound keys
    for chord, value in table.items():
        assert chord == tuple(sorted(chord)) and all(isinstance(k, int) for k in chord)
        assert value in space
    assert keys_to_action(spec_with(ActionSpec.box((2,)), {})) == {}


def test_gymnasium_play_uses_the_table(monkeypatch):
    """gymnasium.utils.play.play drives an env whose get_keys_to_action() is ours."""
    import gymnasium as gym
    from gymnasium.utils.play import play

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    spec = WORLD_PRESETS["tiny"]

    class Env(gym.Env):
        metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
        render_mode = "rgb_array"
        action_space = spec.action.to_space()
        observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros((16, 16, 3), np.uint8), {}

        def step(self, action):
            return np.zeros((16, 16, 3), np.uint8), 0.0, False, False, {}

        def render(self):
            return np.zeros((16, 16, 3), np.uint8)

        def get_keys_to_action(self):
            return keys_to_action(spec)

    taken = []

    def callback(obs, next_obs, action, reward, terminated, truncated, info):
        taken.append(action)
        pygame.event.post(pygame.event.Event(pygame.QUIT))

    pygame.display.init()
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=K.K_LEFT, mod=0, unicode="", scancode=0))
    play(Env(), callback=callback, wait_on_player=True)
    assert taken == [3]


def test_world_env_delegates_to_the_keymap():
    import gymnasium as gym

    import envs  # noqa: F401  (registers worldsdk/World-v0)

    env = gym.make("worldsdk/World-v0", world="tiny")
    try:
        assert env.unwrapped.get_keys_to_action() == keys_to_action(WORLD_PRESETS["tiny"])
    finally:
        env.close()
