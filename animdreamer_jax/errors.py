"""The one exception type that the command line turns into a single error line."""


class UserError(Exception):
  """Bad input from the user (missing/corrupt file, wrong shape, unknown key...).

  The CLI prints `error: <message>` on one line and exits with status 2; the
  message must name the file or key and say what is wrong.
  """
