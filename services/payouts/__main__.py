from services.common.service import main
from services.payouts.service import setup

if __name__ == "__main__":
    main("payouts", setup)
