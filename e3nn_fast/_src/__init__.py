"""Compatibility only: e3nn-jax's private module paths (``e3nn_jax._src.*``), serving the names clients import there.

Some code written against e3nn-jax imports from its private modules, e.g. mace-jax's
``from e3nn_jax._src.activation import parity_function, scalar_activation``.  The modules of this package exist only
so that such code keeps working with e3nn_fast, imported as ``e3nn_fast._src.<module>`` or, once
``sys.modules["e3nn_jax"]`` is set to ``e3nn_fast``, as ``e3nn_jax._src.<module>``.

Every name served here is an alias of an e3nn_fast function, class or value (the very same object), never a second
implementation, and only names that real clients import and that e3nn_fast has an equivalent for are served.  New
code should import the public names (``e3nn_fast.scalar_activation``, ``e3nn_fast.activation.parity_function``).

Under the ``sys.modules`` alias, Python finds these files through ``e3nn_fast.__path__`` and runs them once more under
their ``e3nn_jax._src...`` names; as they hold nothing but references to e3nn_fast objects, both copies serve the
same objects.
"""
